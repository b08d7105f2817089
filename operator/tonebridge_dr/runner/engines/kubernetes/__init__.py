"""The `kubernetes` engine: export namespaced objects as clean YAML, restore them with
server-side apply, and keep a reviewable Git copy of what is safe to share."""
