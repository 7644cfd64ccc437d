"""Model definitions (Hugging Face config + modeling)."""
