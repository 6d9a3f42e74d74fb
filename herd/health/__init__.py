"""The health engine: checks over a frozen snapshot of the fleet (`checks`), the
router-side gathering of that snapshot (`gather`), the bundle store scrub
(`scrub`) and `herd health` (`commands`)."""
