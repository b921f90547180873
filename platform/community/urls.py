from __future__ import annotations

from django.contrib.auth import views as auth_views
from django.urls import path

from bayanihan_site.throttle import login_throttled
from community import views

urlpatterns = [
    path("signup/", views.signup, name="signup"),
    path(
        "login/",
        login_throttled(auth_views.LoginView.as_view(template_name="community/login.html")),
        name="login",
    ),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("api/v1/nodes/enroll", views.api_enroll, name="node-enroll"),
    path("api/v1/nodes/heartbeat", views.api_heartbeat, name="node-heartbeat"),
]
