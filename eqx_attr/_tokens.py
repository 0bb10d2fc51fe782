"""Where the patch tokens of a transformer lie: the token sequence as a grid."""

import math


def token_grid(
    n_tokens: int, n_prefix_tokens: int, grid: tuple[int, int] | None
) -> tuple[int, int]:
    """The `(h, w)` grid that the tokens after the `n_prefix_tokens` class/register
    tokens fold into (`grid`, else the square one), or an error saying what to pass.
    """
    m = n_tokens - n_prefix_tokens
    if m < 1:
        raise ValueError(
            f"`n_prefix_tokens={n_prefix_tokens}` leaves no patch tokens of the "
            f"{n_tokens} tokens; it counts the class/register tokens before the "
            "patch grid (1 for a ViT with a class token)."
        )
    if grid is not None:
        h, w = grid
        if h * w != m:
            raise ValueError(
                f"`grid={tuple(grid)}` has {h * w} cells but there are {m} patch "
                f"tokens ({n_tokens} tokens minus `n_prefix_tokens="
                f"{n_prefix_tokens}`); fix `grid` or `n_prefix_tokens`."
            )
        return int(h), int(w)
    side = math.isqrt(m)
    if side * side == m:
        return side, side
    hint = ""
    for k in range(1, min(n_tokens, 9)):
        r = math.isqrt(n_tokens - k)
        if r * r == n_tokens - k and k != n_prefix_tokens:
            hint = f" With {k} leading class/register token(s) the rest is a "
            hint += f"{r}x{r} grid: pass `n_prefix_tokens={k}`."
            break
    raise ValueError(
        f"There are {m} patch tokens ({n_tokens} tokens minus `n_prefix_tokens="
        f"{n_prefix_tokens}`), which is not a square grid.{hint} Count the "
        "class/register tokens in `n_prefix_tokens`, or pass `grid=(h, w)` for a "
        "non-square patch grid."
    )
