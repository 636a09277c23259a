"""A DICOM node: studies in by C-STORE, the one InferenceModel, results back as DICOM SR and overlay."""
