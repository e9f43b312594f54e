"""The LLM explainer (paper App. H.1, in our words): show the top-activating contexts with the
firing tokens marked ``<<like this>>`` and the activation values, plus the tokens the feature's
decoder direction promotes and suppresses; read the explanation from the ``[EXPLANATION]:`` line.

A reply without that line (or with an empty one) is a *parse failure*: counted and reported,
never scored as if it were an explanation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sparsegap.autointerp.examples import Example, FeatureExamples
from sparsegap.autointerp.llm import LLMClient, Messages
from sparsegap.autointerp.logits import LogitEffects

SYSTEM = """\
You study one latent feature of a language model's internal representation, and your job is to \
say precisely what it responds to.

You will see text excerpts where the feature is active. Tokens on which it fires are wrapped in \
double angle brackets, <<like this>>; a run of consecutive firing tokens is wrapped as a whole, \
<<as in this run>>. After each excerpt, the feature's strongest activation in it is given in \
parentheses. You will also see the tokens whose next-token logits the feature raises most \
(Top_logits) and lowers most (Bottom_logits); they hint at the feature's role in prediction, but \
may be noise — ignore them when they do not fit the excerpts.

Look at the marked tokens themselves and at the context around them, and note how the marked \
tokens relate to the promoted tokens. Keep the explanation short and specific enough that \
someone could predict, from it alone, on which tokens of a new excerpt the feature fires.

End your answer with exactly one line of the form
[EXPLANATION]: <your explanation>"""

_EXPLANATION = re.compile(r"\[EXPLANATION\]\s*:\s*(.*)", re.IGNORECASE)


@dataclass
class Explanation:
    text: str | None  # None when there is no usable explanation
    error: str | None = None  # the request's failure, or parse_failure
    reply: str | None = None  # the raw reply (LLM explainer)


def render(tokens: list[str], marked: set[int]) -> str:
    """Join token strings, wrapping each run of consecutive marked positions in << >>; line
    breaks are shown as ``\\n`` so that each excerpt stays on one line."""
    out: list[str] = []
    for i, token in enumerate(t.replace("\n", "\\n") for t in tokens):
        if i in marked and i - 1 not in marked:
            out.append("<<")
        out.append(token)
        if i in marked and i + 1 not in marked:
            out.append(">>")
    return "".join(out)


def firing_positions(example: Example, fraction: float) -> set[int]:
    """Positions whose activation is > 0 and at least ``fraction`` of the example's peak."""
    floor = fraction * example.peak
    return {i for i, a in enumerate(example.activations) if a > 0 and a >= floor}


def explain_prompt(
    examples: FeatureExamples, logits: LogitEffects, vocab: list[str], mark_fraction: float
) -> Messages:
    lines = ["Excerpts:"]
    for n, e in enumerate(examples.explain, 1):
        text = render([vocab[t] for t in e.tokens], firing_positions(e, mark_fraction))
        lines.append(f"{n}. {text} ({e.peak:.3g})")
    if logits.top:
        lines.append("")
        lines.append("Top_logits: " + ", ".join(repr(t) for t, _ in logits.top))
        lines.append("Bottom_logits: " + ", ".join(repr(t) for t, _ in logits.bottom))
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "\n".join(lines)}]


def parse_explanation(reply: str) -> str | None:
    """The text after the last ``[EXPLANATION]:`` marker, or None when absent or empty."""
    found = _EXPLANATION.findall(reply)
    text = found[-1].strip() if found else ""
    return text or None


class LLMExplainer:
    def __init__(self, client: LLMClient, vocab: list[str], mark_fraction: float) -> None:
        self.client, self.vocab, self.mark_fraction = client, vocab, mark_fraction

    def explain(
        self, examples: list[FeatureExamples], logits: list[LogitEffects]
    ) -> list[Explanation]:
        prompts = [
            explain_prompt(e, lg, self.vocab, self.mark_fraction)
            for e, lg in zip(examples, logits, strict=True)
        ]
        out = []
        parses = [lambda text: parse_explanation(text) is not None] * len(prompts)
        for reply in self.client.complete_many(prompts, parses):
            if reply.text is None:
                out.append(Explanation(None, reply.error))
                continue
            text = parse_explanation(reply.text)
            out.append(Explanation(text, None if text else "parse_failure", reply.text))
        return out
