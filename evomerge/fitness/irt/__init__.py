"""Item response theory: the (multidimensional) 2PL model, calibrations, anchor selection, the
estimators of full-bank accuracy from anchor answers, and their fidelity checks."""
