"""Datasets: folders of images with same-named caption files, their validation and vocabulary
(``prepare``), and building such a folder from Danbooru (``danbooru``)."""
