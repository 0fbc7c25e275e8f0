"""Extension points (Protocols), the entry-point registry, and the built-in ComfyUI backend."""
