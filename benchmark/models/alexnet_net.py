"""The Caffe AlexNet network itself (see ``alexnet.py``, which registers it): apart, so that the
architecture catalogue is read without importing torch."""

from __future__ import annotations

from torch import nn


class AlexNet(nn.Module):
    def __init__(self, num_classes: int = 1000, batch_norm: bool = False):
        super().__init__()

        def block(cin, cout, kernel, stride=1, padding=0):
            norm = [nn.BatchNorm2d(cout)] if batch_norm else []
            return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, padding), *norm, nn.ReLU(inplace=True))

        self.conv1 = block(3, 96, 11, 4)
        self.pool1 = nn.MaxPool2d(3, 2)
        self.conv2 = block(96, 256, 5, padding=2)
        self.pool2 = nn.MaxPool2d(3, 2)
        self.conv3 = block(256, 384, 3, padding=1)
        self.conv4 = block(384, 384, 3, padding=1)
        self.conv5 = block(384, 256, 3, padding=1)
        self.pool5 = nn.MaxPool2d(3, 2)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(inplace=True), nn.Dropout(),
            nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Dropout(), nn.Linear(4096, num_classes),
        )

    def forward(self, x):
        x = self.pool1(self.conv1(x))
        x = self.pool2(self.conv2(x))
        x = self.pool5(self.conv5(self.conv4(self.conv3(x))))
        return self.classifier(nn.functional.adaptive_avg_pool2d(x, 6))
