"""What the ops share: the backend table, argument checks, surrogates, the eager autograd helper,
the Triton LIF math and bit tiles."""
