"""How much GPU memory each stage of a run needs, and what to change when a card is too small."""
