"""Model files: what a user typed resolved to one reference (:mod:`~blazeport.modelfiles.ref`), opened on a runtime
(:mod:`~blazeport.modelfiles.loader`, :mod:`~blazeport.modelfiles.runtimes`, :mod:`~blazeport.modelfiles.backends`),
the weights and metadata inside them, the bundled models and their checks, and how far two runtimes agree.
"""
