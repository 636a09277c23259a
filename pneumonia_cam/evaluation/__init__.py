"""Statistics for judging classifiers: metrics, bootstrap CIs, significance tests, calibration and plots."""
