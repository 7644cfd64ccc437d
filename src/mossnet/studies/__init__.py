"""Equal-budget studies: does MossNet beat its peers? (``mossnet compare``, docs/STUDIES.md)

=================  ===========================================================================
module             what it holds
=================  ===========================================================================
``arch_configs``   the compared architectures, built at matched *active* parameters
``mqar_data``      the seeded multi-query associative recall (MQAR) generator
``mqar``           the MQAR study: widths x numbers of pairs x learning rates, recall accuracy
``lm_study``       the language-model study (and the ablations) on a prepared corpus
``runner``         one run = one result JSON; skip finished runs; run several in parallel
``report``         tables (Markdown) and plots (PNG)
``study``          one ``mossnet compare`` invocation: specs -> runs -> report
``common``         thread and job counts (device and autocast: ``mossnet.runtime``)
=================  ===========================================================================

Heavy imports (torch, transformers) happen inside functions, so importing the package is cheap.
"""
