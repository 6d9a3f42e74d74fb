"""The operator dashboard: /dashboard (one page) and its JSON under /dashboard/api/."""
