"""Who asks, and what they may be served: the principal of each exchange
(`bridge.identity.principal`) and what each principal is entitled to of the stored
answers (`bridge.identity.entitlement`)."""
