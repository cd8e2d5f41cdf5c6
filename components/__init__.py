"""Diffusion-GR2 platform: one subpackage per stage of the recipe (see DESIGN in README)."""
