"""Examples of user components registered from outside the treegrpo package."""
