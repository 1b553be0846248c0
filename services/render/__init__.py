"""The render service: image editing (Claid) and 3D import, export and render (Clara)."""
