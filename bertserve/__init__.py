"""bertserve: export and serve fine-tuned BERT-family encoders."""

__version__ = "0.1.0"
