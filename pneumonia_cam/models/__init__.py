"""Networks, CAMs and weights; importing it registers the `weights_input` resolver the data configs use."""

import pneumonia_cam.models.weights  # noqa: F401
