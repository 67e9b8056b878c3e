"""The core every transport calls: preprocessing, inference backends, policy and store."""
