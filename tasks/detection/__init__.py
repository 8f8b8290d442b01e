"""Fast R-CNN (ResNet-C4) object detection on VOC: proposals, detector, training, evaluation.

``evaluate``: the VOC07 detection AP (11-point, all-point, COCO-style AP50:95);
``proposals``: Detectron-format proposal files, Selective Search and the on-disk proposal cache;
``rpn``: the RPN proposal generator for machines without opencv-contrib;
``model``: the detector built from a benchmark backbone; ``train``: the resumable training loop;
``detectron2_backend``: checkpoint conversion for detectron2 (optional backend).
"""

NAME = "detection_voc07"  # the name the task is registered and configured under
