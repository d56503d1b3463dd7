"""The labelling layer: `lightmer label`, the page people answer questions on.

Its HTTP server (server), a window as files a person can look at and listen to (media), and
Label Studio files (label_studio); the page itself is package data in `page/`. Imports core,
evaluation and active.
"""
