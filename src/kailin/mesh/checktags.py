"""NLM's check tags: descriptors that MEDLINE indexers consider for *every* article.

Check tags say who or what was studied (species, sex, age group, pregnancy, historical period,
in-vitro work), not what the article is about. They annotate a large share of all records
(``Humans`` alone about two thirds of MEDLINE), so in a document score they match between almost
any two abstracts and drown the topical descriptors. Leaving them out is an option of
:class:`kailin.mesh.score.MeshScorer` (``exclude="check-tags"``).

Source: NLM, *MEDLINE Indexing Online Training Course*, section "Check Tags"
(https://www.nlm.nih.gov/bsd/indexing/training/CHK_010.html and the pages after it, last
reviewed 2015): Humans, Animals, Male, Female, Pregnancy, In Vitro; the age groups; and the
historical periods. Names are those of MeSH 2024; UIs are given so that a MeSH build whose names
differ still resolves them.
"""

from __future__ import annotations

from typing import Any

#: (UI, MeSH 2024 name) of every check tag
CHECK_TAGS: tuple[tuple[str, str], ...] = (
    ("D006801", "Humans"),
    ("D000818", "Animals"),
    ("D008297", "Male"),
    ("D005260", "Female"),
    ("D011247", "Pregnancy"),
    ("D066298", "In Vitro Techniques"),
    # age groups
    ("D007231", "Infant, Newborn"),
    ("D007223", "Infant"),
    ("D002675", "Child, Preschool"),
    ("D002648", "Child"),
    ("D000293", "Adolescent"),
    ("D055815", "Young Adult"),
    ("D000328", "Adult"),
    ("D008875", "Middle Aged"),
    ("D000368", "Aged"),
    ("D000369", "Aged, 80 and over"),
    # historical periods
    ("D049690", "History, Ancient"),
    ("D049691", "History, Medieval"),
    ("D049668", "History, 15th Century"),
    ("D049669", "History, 16th Century"),
    ("D049670", "History, 17th Century"),
    ("D049671", "History, 18th Century"),
    ("D049672", "History, 19th Century"),
    ("D049673", "History, 20th Century"),
    ("D049674", "History, 21st Century"),
)


def check_tag_uis(mesh: Any | None = None) -> list[str]:
    """The check tags' UIs; with ``mesh``, those this build knows (by UI, else by name)."""
    if mesh is None:
        return [ui for ui, _ in CHECK_TAGS]
    out: list[str] = []
    for ui, name in CHECK_TAGS:
        found = ui if ui in mesh.vocab.id_of else mesh.lookup(name)
        if found is not None:
            out.append(found)
    return out
