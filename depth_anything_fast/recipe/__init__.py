"""Showing that the recipe works on the synthetic world (REFERENCE §1.2-1.5).

`semantic_encoder`: a frozen semantic encoder that is not the teacher (stands in for DINOv2).
`ablation`: the paper's ablation, ``python -m depth_anything_fast.recipe.ablation``.
The end-to-end demo is ``python -m depth_anything_fast.demo``.
"""
