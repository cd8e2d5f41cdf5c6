"""The recipe: every stage in one table (:mod:`components.recipe.stages`) and the order they run
in (:mod:`components.recipe.run`). Direct runs, torchrun (:mod:`components.recipe.launch`) and the
Prefect flows all run the stages from that table."""
