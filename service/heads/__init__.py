"""Task heads: turn a request's logits into the response payload, in numpy."""
