"""After (and during) training: predictors with test-time augmentation, metrics, the evaluation of a
split with its report and figures, predicting image files, exporting a model."""
