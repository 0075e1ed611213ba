"""The seed tutorial's hand-written gradients as it wrote them, checked by vizgrad against autograd.

The seed computes ``dw = x.t().mm(error) / batch_size`` and ``db = error.sum()``
for ``loss = sum(error**2) / batch_size``; autograd's are twice ``dw`` and
``2 * sum(error) / batch_size``. vizgrad finds both, with the constant factors:

    python examples/linear_regression_seed_formulas.py

prints two ``manual_mismatch`` findings: ``w`` is 0.5x autograd's and ``b`` is
``batch_size / 2`` times autograd's, on every step.
"""

import linear_regression_manual


def seed_gradients(x, error, batch_size):
    """The seed's formulas, unchanged."""
    dw = x.t().mm(error) / batch_size
    db = error.sum()
    return dw, db


def main(argv=None):
    """Trains with the seed's formulas and prints the two findings."""
    return linear_regression_manual.main(argv, gradients=seed_gradients, steps=2000)


if __name__ == "__main__":
    main()
