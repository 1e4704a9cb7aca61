"""The methods benchmark: every aggregator and scalarizer on a two-objective toy and on
MultiDigits."""
