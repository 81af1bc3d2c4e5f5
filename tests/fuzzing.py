"""Hypothesis strategies shared by the parser fuzz tests."""

from hypothesis import strategies as st


def documents_from(real_lines: list[str], max_lines: int):
    """Bytes of a file made from real lines, some with text inserted or cut short, or random
    bytes: what a damaged or hostile capture of that format looks like."""
    line = st.one_of(
        st.sampled_from(real_lines),
        st.builds(lambda l, i, s: l[:i] + s + l[i:], st.sampled_from(real_lines),
                  st.integers(0, 140), st.text(max_size=6)),
        st.builds(lambda l, i: l[:i], st.sampled_from(real_lines), st.integers(0, 140)),
    )
    return st.one_of(st.binary(max_size=400),
                     st.lists(line, max_size=max_lines).map(
                         lambda ls: "\n".join(ls).encode("utf-8", "surrogatepass")))
