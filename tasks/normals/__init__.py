"""Surface normal estimation on NYUv2 (Goyal et al. 2019): dilated ResNet + pyramid pooling decoder
trained on a frozen trunk up to res4, codebook classification, angular metrics."""
