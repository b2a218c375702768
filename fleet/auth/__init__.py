"""Access control of the fleet service: principals, roles and permissions, API tokens, the trail.

``permissions`` holds the role table, ``deps.require`` is the one dependency every route declares,
``tokens`` the hashed API tokens and ``trail`` the hash-chained audit trail.
"""
