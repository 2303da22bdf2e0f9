"""Training: teacher, student and metric fine-tuning stages (``python -m depth_anything_fast.train``).

Modules are imported where they are used (the trainer pulls in the model and data stacks), so
this package's import is free of heavy dependencies.
"""
