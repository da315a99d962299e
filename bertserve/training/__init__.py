"""Fine-tuning (the demo models, tests) and the offline demo fixture: beside export, on the runtime."""
