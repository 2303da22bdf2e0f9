"""`depth-anything-fast app`: a web page to try a model (Gradio, the `app` extra)."""
