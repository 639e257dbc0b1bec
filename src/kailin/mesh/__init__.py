"""MeSH knowledge hierarchy: vocabulary, tree-number hierarchy, information content, measures."""

from kailin.mesh.build import Mesh, build_mesh, default_mesh_dir, load_mesh
from kailin.mesh.vocabulary import MeshVocabulary, load_vocabulary

__all__ = ["Mesh", "MeshVocabulary", "build_mesh", "default_mesh_dir", "load_mesh",
           "load_vocabulary"]
