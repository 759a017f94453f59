"""Running a trained model on new inputs: predictors (TTA, ensembles), faces, photos, videos, export, saliency."""
