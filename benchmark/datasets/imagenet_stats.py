"""The ImageNet channel statistics every pipeline normalises with, in a module of their own: the
architecture catalogue reads them without importing the image pipeline (torchvision)."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
