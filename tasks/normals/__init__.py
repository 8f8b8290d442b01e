"""Surface normal estimation on NYUv2 (Goyal et al. 2019): dilated ResNet + pyramid pooling decoder
trained on a frozen trunk up to res4, codebook classification, angular metrics."""

# what the decoder predicts, declared here so that the task's options are read without the training code (torch)
HEADS = ("codebook", "regression")
