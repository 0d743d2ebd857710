"""The napari plugin (manifest ``selma3d/napari.yaml``, optional extra ``selma3d[napari]``):
:mod:`.reader` opens selma3d inputs and outputs as layers, :mod:`.widget` segments an image layer."""
