"""cosyfast: fast, concurrent CosyVoice2/3 LLM stage (placeholder; the real module replaces this at merge)."""
