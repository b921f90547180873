from __future__ import annotations

from django import forms


class SignupForm(forms.Form):
    username = forms.RegexField(regex=r"^[\w.@+-]{3,40}$", help_text="3–40 letters, digits or . @ + - _")
    email = forms.EmailField()
    password = forms.CharField(widget=forms.PasswordInput, min_length=8)
    accept_terms = forms.BooleanField(required=True, label="I accept the contribution terms")
