"""Patient-grouped, label-stratified cross-validation folds, so no patient leaks between train and test."""

import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold


def assign_folds(df: pd.DataFrame, n_folds: int = 5, seed: int = 42) -> pd.Series:
    """Test-fold id (0..n_folds-1) of every row, keeping each patient's images together."""
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    folds = pd.Series(-1, index=df.index, name="fold", dtype="int64")
    for fold, (_, test_rows) in enumerate(splitter.split(df, df["label"], groups=df["patient_id"])):
        folds.iloc[test_rows] = fold
    return folds
