"""Networks: backbones (registry + offline weights), CAM classifier, RPNet, IRNet, segmentation net."""
