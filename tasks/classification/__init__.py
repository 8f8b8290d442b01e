"""Image-classification evaluations on any ImageFolder / CSV dataset: ``knn`` (weighted kNN),
``logreg`` (multinomial logistic regression, full data and few-shot) and ``linear_probe`` (a grid
of linear heads trained together on cached features)."""
