"""Linear SVMs of the Goyal et al. 2019 protocols (VOC07 classification, low-shot), shared by the
SVM tasks:

- ``protocol``: cost lists, feature normalisation, training labels, what a solve reports;
- ``liblinear``: the reference's loop (scikit-learn's LinearSVC), one class and cost at a time;
- ``newton``: a batched squared-hinge solver (finite Newton + CG, liblinear's stopping test);
- ``batched``: the protocols on it: cost paths, per-class CV, the VOC07 and low-shot sweeps,
  memory planning;
- ``solvers``: both behind one interface (``make_solver``), so tasks never branch on the solver.
"""
