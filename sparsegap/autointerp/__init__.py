"""Automated interpretability of learned features (paper §5, App. H).

For random live features of a trained language-model encoder: activation records on held-out
text (``examples``), logit effects (``logits``), an explanation (``explainer``: an LLM; or
``ngram``: token statistics, no LLM), a score on disjoint held-out examples (``scorer``: an LLM;
or ``ngram.RuleScorer``), through one LLM client with a response cache (``llm``, ``cache``);
``pipeline`` runs it all, ``source`` connects a run folder, ``report`` draws the F1 distributions.
"""
