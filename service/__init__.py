"""The bertserve HTTP service. Never imports torch or transformers."""
