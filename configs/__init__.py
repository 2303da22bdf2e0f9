"""Training configs (YAML), installed as ``depth_anything_fast.configs`` so the demo and users of
an installed wheel find them; ``configs/*.yaml`` in a checkout are the same files."""
