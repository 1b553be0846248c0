"""Clara's scenes on the render service: import (untrusted 3D files → meshes), export (a
scene → OBJ / glTF / STL / PLY files) and render (a scene → an image, moderngl on EGL).

`model` holds the one shape every part shares: a `Placed` mesh, in local coordinates, with
the world transform its object carries in the objects service.
"""
